"""The accelerator catalog: vendor datasheet figures, each with its source.

Figures are dense (no sparsity) peak throughput in TFLOPS. A figure that no public
source gives is None, never a guess.

Conventions:
- bf16/fp16 are tensor/matrix-unit figures; fp32 is plain (non-tensor) FP32.
- A sparse figure is halved only where a source explicitly labels it "with sparsity";
  the notes say so when that happened.
- memory_bandwidth_gbps and interconnect_bandwidth_gbps are GB/s per accelerator; TB/s
  figures were multiplied by 1000. NVIDIA NVLink figures are total bidirectional
  bandwidth per GPU as NVIDIA quotes them; for other vendors the direction is often not
  stated and the notes say so.
- For PCIe cards, "interconnect" is the host link (no GPU-to-GPU link).
- Many figures for export-variant and Chinese accelerators come from press coverage,
  third-party spec databases or cloud-provider docs, not vendor datasheets; the notes
  say which and list conflicting figures.
"""

ACCELERATORS: list[dict[str, object]] = [
    {
        "slug": "nvidia-a100-80g",
        "vendor": "NVIDIA",
        "model": "A100 80GB SXM",
        "origin": "imported",
        "memory_gb": 80,
        "memory_bandwidth_gbps": 2039,
        "bf16_dense_tflops": 312.0,
        "fp16_dense_tflops": 312.0,
        "fp32_tflops": 19.5,
        "interconnect": "NVLink 3",
        "interconnect_bandwidth_gbps": 600,
        "tdp_watts": 400,
        "sources": [
            "https://glennklockwood.com/garden/processors/A100",
            "https://www.thundercompute.com/blog/nvidia-a100-specs-full-guide",
            "https://fudzilla.com./news/ai/50832-nvidia-unveils-the-a100-tensor-core-gpu",
        ],
        "notes": (
            "TFLOPS (BF16/FP16 dense 312, sparse 624; FP32 19.5) from glennklockwood, which "
            "cites the NVIDIA A100 datasheet. 80 GB HBM2e / 2,039 GB/s / 400 W from the "
            "thundercompute spec table (SXM 80GB column). Third-generation NVLink, 12 links, "
            "600 GB/s total from fudzilla."
        ),
    },
    {
        "slug": "nvidia-a800-80g",
        "vendor": "NVIDIA",
        "model": "A800 80GB SXM",
        "origin": "imported",
        "memory_gb": 80,
        "memory_bandwidth_gbps": 2039,
        "bf16_dense_tflops": 312.0,
        "fp16_dense_tflops": 312.0,
        "fp32_tflops": 19.5,
        "interconnect": "NVLink 3",
        "interconnect_bandwidth_gbps": 400,
        "tdp_watts": 400,
        "sources": [
            "https://tweakers.net/nieuws/203182/nvidia-introduceert-a800-gpu-voor-china-die-niet-onder-exportrestricties-vs-valt.html",
            "https://aiwiki.ai/wiki/nvidia_a800",
            "https://glennklockwood.com/garden/processors/A100",
        ],
        "notes": (
            "Export variant of the A100 on the same GA100 silicon (hence 'NVLink 3', not stated "
            "separately for A800). NVLink 400 GB/s (vs 600 "
            "on A100), up to 80 GB HBM2e and 400 W for the SXM model from tweakers (citing "
            "Reuters/NVIDIA). aiwiki and tweakers both state that only the NVLink bandwidth "
            "differs and compute/memory/Tensor Core figures are unchanged, so memory "
            "bandwidth and TFLOPS are the A100 80GB SXM datasheet values (see that entry). "
            "No standalone A800 SXM datasheet was found in the searched corpora."
        ),
    },
    {
        "slug": "nvidia-h100-sxm",
        "vendor": "NVIDIA",
        "model": "H100 SXM 80GB",
        "origin": "imported",
        "memory_gb": 80,
        "memory_bandwidth_gbps": 3350,
        "bf16_dense_tflops": 989.4,
        "fp16_dense_tflops": 989.4,
        "fp32_tflops": 66.9,
        "interconnect": "NVLink 4",
        "interconnect_bandwidth_gbps": 900,
        "tdp_watts": 700,
        "sources": [
            "https://glennklockwood.com/garden/processors/h100",
            "https://gpu.blog/gpus/nvidia-h100-sxm",
            "https://prohardver.hu/hir/nvidia_reszletezte_h100_gyorsitok_specifikacio.html",
        ],
        "notes": (
            "glennklockwood (citing the NVIDIA H100 whitepaper) gives BF16/FP16 matrix "
            "989.4 dense and 1978.9 sparse, FP32 66.9, 80 GB HBM3, 3.35 TB/s, 900 GB/s "
            "NVLink, 700 W. NVIDIA's datasheet rounds these to 1,979 (with sparsity) and 67 "
            "(prohardver reproduces the final NVIDIA table: 3.35 TB/s, 700 W, 900 GB/s). "
            "NVLink generation 4 from gpu.blog."
        ),
    },
    {
        "slug": "nvidia-h800-sxm",
        "vendor": "NVIDIA",
        "model": "H800 SXM 80GB",
        "origin": "imported",
        "memory_gb": 80,
        "memory_bandwidth_gbps": 3350,
        "bf16_dense_tflops": None,
        "fp16_dense_tflops": None,
        "fp32_tflops": None,
        "interconnect": "NVLink 4",
        "interconnect_bandwidth_gbps": 400,
        "tdp_watts": None,
        "sources": [
            "https://github.com/astroC86/gpu-datasheet/blob/main/README.md",
            "https://www.philisun.com/technical-analysis/nvidia-h800-vs-h100-a-technical-deep-dive-into-politically-defined-ai-chips",
            "https://www.tumgag.com/tag/nvidia%20h100",
            "https://aiwiki.ai/wiki/nvidia_h800",
        ],
        "notes": (
            "Export variant of the H100 on the same GH100 silicon; aiwiki and philisun say "
            "the cuts are NVLink bandwidth and FP64 (about 1 TFLOPS). 80 GB / 3.35 TB/s from "
            "the astroC86 table (links an H800 datasheet PDF) and philisun. NVLink 400 GB/s "
            "total bidirectional from tumgag/philisun; generation 4 taken from the shared "
            "Hopper design (not stated separately for H800). BF16/FP16 left None: astroC86 "
            "lists 1,979 TFLOPS, which matches NVIDIA's with-sparsity H100 figure, but it "
            "does not say the figure is sparse, so it was not halved. FP32 and TDP: no "
            "citable source found (not copied from H100)."
        ),
    },
    {
        "slug": "nvidia-h20",
        "vendor": "NVIDIA",
        "model": "H20 (HGX, 96GB)",
        "origin": "imported",
        "memory_gb": 96,
        "memory_bandwidth_gbps": 4000,
        "bf16_dense_tflops": 148.0,
        "fp16_dense_tflops": 148.0,
        "fp32_tflops": 44.0,
        "interconnect": "NVLink 4",
        "interconnect_bandwidth_gbps": 900,
        "tdp_watts": 400,
        "sources": [
            "https://www.tomshardware.com/pc-components/gpus/new-nvidia-ai-gpus-designed-to-get-around-us-export-bans-come-to-china-h20-l20-and-l2-to-fill-void-left-by-restricted-models",
            "https://zangshuxian.com/new/674733024499207168",
            "https://willitrunai.com/es/gpus/h20-96gb",
            "http://1cnz.cn/d/2353773.html",
        ],
        "notes": (
            "96 GB HBM3, 4.0 TB/s, BF16/FP16 tensor 148 TFLOPS from the Tom's Hardware spec "
            "table (retailer listing). zangshuxian states 148 TFLOPS is the dense FP16 "
            "figure and gives FP32 44 TFLOPS. NVLink 4.0 at 900 GB/s and 400 W TDP from "
            "willitrunai; 900 GB/s NVLink also in 1cnz.cn. Figures are press/third-party, "
            "not an NVIDIA datasheet. A 141 GB H20 variant is reported elsewhere; this "
            "entry is the 96 GB part."
        ),
    },
    {
        "slug": "nvidia-l20",
        "vendor": "NVIDIA",
        "model": "L20 48GB PCIe",
        "origin": "imported",
        "memory_gb": 48,
        "memory_bandwidth_gbps": 864,
        "bf16_dense_tflops": 119.5,
        "fp16_dense_tflops": 119.5,
        "fp32_tflops": 59.35,
        "interconnect": "PCIe 4.0",
        "interconnect_bandwidth_gbps": 64,
        "tdp_watts": 275,
        "sources": [
            "https://www.tomshardware.com/pc-components/gpus/new-nvidia-ai-gpus-designed-to-get-around-us-export-bans-come-to-china-h20-l20-and-l2-to-fill-void-left-by-restricted-models",
            "https://www.topcpu.net/en/gpu-c/a40-pcie-vs-l20",
            "https://www.mullet.se/product.html?product_id=355414",
        ],
        "notes": (
            "48 GB GDDR6, 864 GB/s, BF16/FP16 tensor 119.5 TFLOPS (TF32 59.8, FP8 239) from "
            "the Tom's Hardware table; not marked sparse there. FP32 59.35 TFLOPS, 275 W "
            "and PCIe 4.0 x16 from the topcpu spec database (a clock-derived figure, not "
            "an NVIDIA datasheet value). No NVLink. 64 GB/s is PCIe Gen4 x16 bidirectional "
            "as stated in NVIDIA's L40/L40S datasheet table (mullet.se), not an L20 document."
        ),
    },
    {
        "slug": "huawei-ascend-910b",
        "vendor": "Huawei",
        "model": "Ascend 910B",
        "origin": "domestic",
        "memory_gb": 64,
        "memory_bandwidth_gbps": None,
        "bf16_dense_tflops": None,
        "fp16_dense_tflops": 280.0,
        "fp32_tflops": None,
        "interconnect": "HCCS",
        "interconnect_bandwidth_gbps": None,
        "tdp_watts": None,
        "sources": [
            "https://ai.gitee.com/docs/compute/clusters_gpu/ascend_gpu",
            "https://boardor.com/blog/huawei-ascend-910b-outperforms-h20-910c-approaches-h100",
            "https://jishuzhan.net/article/1872432607539499010",
        ],
        "notes": (
            "No Huawei datasheet for the 910B was found. 64 GB HBM2e, FP16 280 TFLOPS and "
            "HCCS 8-card full interconnect from the Gitee AI (MoArk) cloud docs; they say "
            "BF16 is supported but the BF16 figure was not in the retrieved text, so BF16 is "
            "None. Public figures conflict: FP16 320 TFLOPS, 400 GB/s memory bandwidth and "
            "310 W (boardor); FP16 256, FP32 128 TFLOPS, 768 GB/s, 600 GB/s chip "
            "interconnect and 350 W (jishuzhan, whose FP16/INT8 match the original Ascend "
            "910). Because of these conflicts memory bandwidth, FP32, HCCS bandwidth and "
            "TDP are left None. Whether FP16 280 is dense is not stated (Ascend is not "
            "known to quote sparse figures, but no source says so)."
        ),
    },
    {
        "slug": "moorethreads-mtt-s4000",
        "vendor": "Moore Threads",
        "model": "MTT S4000",
        "origin": "domestic",
        "memory_gb": 48,
        "memory_bandwidth_gbps": 768,
        "bf16_dense_tflops": 100.0,
        "fp16_dense_tflops": 100.0,
        "fp32_tflops": 25.0,
        "interconnect": "MTLink 1.0",
        "interconnect_bandwidth_gbps": 240,
        "tdp_watts": None,
        "sources": [
            "https://www.io-tech.fi/uutinen/moore-threads-julkaisi-uuden-mtt-s4000-laskentakortin-ja-kuae-intelligent-computing-center-palvelinklusterit/",
            "https://www.titancomputers.com/Chinese-AI-GPUs-are-on-the-Rise-s/2027.htm",
            "https://tweakpc.de/news/49715/moore-threads-leistungsstarke-mtt-s4000-gpu-aus-china-mit-25-tflops",
        ],
        "notes": (
            "Press coverage of the Dec 2023 launch: FP32 25, TF32 50, FP16/BF16 100 TFLOPS, "
            "INT8 200 TOPS, 48 GB GDDR6 on 384-bit at 768 GB/s, PCIe 5.0 x16, MTLink 1.0 at "
            "240 GB/s between cards (io-tech.fi; titancomputers and tweakpc agree on the "
            "compute and memory figures). Sources do not say whether the FP16/BF16 figure is "
            "dense, nor whether 240 GB/s is uni- or bidirectional. Some outlets (dvd.gr, "
            "overclocking.com) quote MTLink as 768 GB/s, apparently confusing it with memory "
            "bandwidth. TDP: not found."
        ),
    },
    {
        "slug": "hygon-dcu-k100",
        "vendor": "Hygon",
        "model": "DCU K100",
        "origin": "domestic",
        "memory_gb": 64,
        "memory_bandwidth_gbps": None,
        "bf16_dense_tflops": None,
        "fp16_dense_tflops": 100.0,
        "fp32_tflops": 24.5,
        "interconnect": None,
        "interconnect_bandwidth_gbps": None,
        "tdp_watts": None,
        "sources": [
            "https://github.com/wangzy0327/hblas-bench/blob/main/DCU-bench.md",
        ],
        "notes": (
            "K100 picked over Z100 because only K100 figures were found. Source is a "
            "benchmark repo table described as Hygon's official figures (no Hygon page was "
            "found): K100 FP16 100 TFLOPS, FP32 24.5, FP64 24.5, INT8 200 TOPS, 64 GB, all "
            "marked 'No VectorCore'; BF16 and memory bandwidth are 'NA' there, so None "
            "here. The same table gives the K100 AI variant (a different SKU) as BF16/FP16 "
            "196, FP32 49 TFLOPS, 64 GB at 896 GB/s. Interconnect, its bandwidth and TDP: "
            "not found."
        ),
    },
    {
        "slug": "cambricon-mlu370-x8",
        "vendor": "Cambricon",
        "model": "MLU370-X8",
        "origin": "domestic",
        "memory_gb": 48,
        "memory_bandwidth_gbps": 614.4,
        "bf16_dense_tflops": 96.0,
        "fp16_dense_tflops": 96.0,
        "fp32_tflops": 32.0,
        "interconnect": "MLU-Link",
        "interconnect_bandwidth_gbps": 200,
        "tdp_watts": 250,
        "sources": [
            "http://guangxilong.com/c/032129635H022.html",
            "http://www.rencaizhenjiang.com/news/hard/20220324/124384.html",
        ],
        "notes": (
            "Press reports of Cambricon's March 2022 launch: dual-chip (two Siyuan 370, four "
            "dies) card; peak FP32 32, FP16 96, BF16 96 TFLOPS; 48 GB LPDDR5 at 614.4 GB/s; "
            "PCIe 4.0 x16 host link; 250 W max training power; MLU-Link bridge gives 200 "
            "GB/s communication throughput per card (about 3.1x PCIe 4.0). Figures are per "
            "card, not per chip. Dense/sparse and link direction not stated."
        ),
    },
    {
        "slug": "nvidia-h200-sxm",
        "vendor": "NVIDIA",
        "model": "H200 SXM 141GB",
        "origin": "imported",
        "memory_gb": 141,
        "memory_bandwidth_gbps": 4800,
        "bf16_dense_tflops": 989.0,
        "fp16_dense_tflops": 989.0,
        "fp32_tflops": None,
        "interconnect": "NVLink 4",
        "interconnect_bandwidth_gbps": 900,
        "tdp_watts": 700,
        "sources": [
            "https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html",
            "https://geektopia.es/es/technology/2023/11/13/noticias/nvidia-anuncia-la-aceleradora-h200-tiene-141-gb-de-hbm3e.html",
            "https://aiwiki.ai/wiki/nvidia_h200",
        ],
        "notes": (
            "141 GB HBM3e, 4.8 TB/s, 700 W, NVLink 4 at 900 GB/s from geektopia (launch "
            "news) and aiwiki. BF16/FP16 ~989 TFLOPS from itkb.uw.cz, which states its "
            "figures are dense (without 2:4 sparsity). Some pages list 1,979 as 'dense'; "
            "that is NVIDIA's with-sparsity figure. FP32: no source found in the searched "
            "corpora."
        ),
    },
    {
        "slug": "nvidia-l40s",
        "vendor": "NVIDIA",
        "model": "L40S 48GB PCIe",
        "origin": "imported",
        "memory_gb": 48,
        "memory_bandwidth_gbps": 864,
        "bf16_dense_tflops": 362.05,
        "fp16_dense_tflops": 362.05,
        "fp32_tflops": 91.6,
        "interconnect": "PCIe 4.0",
        "interconnect_bandwidth_gbps": 64,
        "tdp_watts": 350,
        "sources": [
            "https://www.mullet.se/product.html?product_id=355414",
            "https://omegaco.ae/shop/gpu-cards-edge-ai/nvidia-l40s",
        ],
        "notes": (
            "From a reseller's reproduction of NVIDIA's L40/L40S datasheet table (mullet.se): "
            "BF16/FP16 tensor 362.05 dense (733 with sparsity, marked), FP32 91.6, 48 GB "
            "GDDR6, 864 GB/s, PCIe Gen4 x16 64 GB/s bidirectional, 350 W max. omegaco agrees "
            "on 864 GB/s, 91.6 TFLOPS and 350 W; itcreations says 300 W (that is the L40 "
            "figure). No NVLink."
        ),
    },
]
