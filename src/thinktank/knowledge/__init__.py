"""Knowledge bases: parsing, chunking, embeddings, indexes and retrieval."""
