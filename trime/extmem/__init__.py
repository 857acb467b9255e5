"""External memory (paper §2.2 Eq. 4, §4.3, Eq. 7): datastores on disk, FAISS indexes,
retrieval, and the fingerprints that tie a datastore to its dictionary, split and model.
Nothing here imports fairseq."""
