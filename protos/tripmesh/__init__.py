"""tripmesh: generated protobuf and gRPC stubs live in tripmesh.v1."""
