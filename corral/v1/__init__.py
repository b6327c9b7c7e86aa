"""Generated gRPC code for package corral.v1 (scripts/gen_protos.py)."""
