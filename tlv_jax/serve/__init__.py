"""An OpenAI-compatible chat server for video questions with continuous batching.

    python -m tlv_jax.serve --model DIR [--host 127.0.0.1] [--port 8000] [--media-root DIR] [--max-batch 8]

One module per job: `protocol` (request bodies -> prompt ids and options), `media` (video / image URLs -> frames,
never fetched from the network), `video_cache` (encodings by content hash, frames decoded in a worker pool),
`steps` (the compiled prefill-into-a-slot and batched decode step), `engine` (the decode slots and their scheduler),
`metrics` (Prometheus), `errors` (OpenAI error bodies), `page` (the browser page at `/`), `app` (the routes).
"""
