"""Loop closure and relocalization: the engine facade, retrieval, verification, acceptance, pose graph, drivers."""
