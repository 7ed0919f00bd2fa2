"""What exists: hubs, clusters, organizations, centers, accelerators and resource pools."""
