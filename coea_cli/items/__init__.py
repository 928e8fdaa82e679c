"""Item text, content and collaborative embeddings (`coea tokenize-items`).

`encoder.load_text_encoder` and `encoder.encode_texts` are the shared sentence-encoder API
(also used to embed group personas).
"""
