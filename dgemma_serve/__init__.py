"""`dgemma serve`: the engine as an HTTP service for many editors.

llama.cpp's `/infill` (llama.vim, llama.vscode) and OpenAI's completions / chat completions
(Continue, the `openai` client, dgemma-ls's remote backends), served by one engine thread that
batches concurrent holes. Imports run one way: dgemma_serve -> engine -> kernels.
"""
