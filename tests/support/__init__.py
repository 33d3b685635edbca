"""Helpers shared by the test suites: child processes, polling, a test discovery client."""
