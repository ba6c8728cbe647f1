"""Location service: GPS ping ingest (HTTP and WebSocket) and the H3 index of driver positions."""
