"""The keyframe map in RAM and its file format (one versioned, crc-checked, memory-mappable file)."""
