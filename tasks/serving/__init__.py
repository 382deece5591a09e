"""What the nightly job publishes from a model: embeddings and the FAISS index, top-k tables,
queries.
"""
