"""What puts events on the topics: the simulator, the mapping of real exports, replay."""
