"""Generated stubs for package tripmesh.v1 (`make protos`; never edit the *_pb2* files)."""
