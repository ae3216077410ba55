"""What runs underneath `streams`: the embedded broker, the transports and the worker loop."""
