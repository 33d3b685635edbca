"""HTTP/1.1 proxying: sans-IO readers and head writers, and the trio connection handler."""
