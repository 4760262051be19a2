"""The UCI regression benchmark: mdnlab and a peer fitted on the published protocol's splits,
next to the published numbers (docs/benchmark.md)."""
