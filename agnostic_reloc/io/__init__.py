"""Everything that crosses the boundary: the message contract, message readers, bags, stamp sync, input events,
camera and image input, TUM files, the node's parameter files and results.json."""
