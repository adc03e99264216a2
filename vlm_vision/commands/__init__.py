"""The `vlm-vision` commands: one module per subcommand (flags and calls), the dispatcher and the error boundary."""
