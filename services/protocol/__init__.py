"""What crosses a service boundary, defined once: wire models and the action grammar."""
