"""Who gets what: placement (filter, score, explain), the booking ledger that never
oversubscribes, the gRPC broker, and dispatch of booked workloads to the centers' agents."""
