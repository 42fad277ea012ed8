"""What puts events on the topics: the simulator, the mapping and loading of a
company's exports, their replay, and the producer they share."""
