"""Generated protobuf code for FLUX Gateway (from proto/). Do not edit."""
