"""dgemma-ls: a language server for inline completions, fill-in-the-middle and JSON /
Markdown-table repair, driven by a DiffusionGemma block-diffusion model."""
