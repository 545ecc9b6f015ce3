"""`dgemma-ls --quantize` end to end: the real server loads a quantized tiny checkpoint and serves
ghost text; a quantization that cannot run is reported and the server stays up."""

from __future__ import annotations

import pytest
from lsp_support import FAILED, FAST, READY, Doc, log_containing, session
from lsprotocol import types

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.slow]

TEXT = "Shopping list for the weekend:\napples, pears and \nDone.\n"
CURSOR = TEXT.index("and \n") + len("and ")


async def test_int4_flag_serves_inline_completions(tiny_model_dir):
    async with session("visual_studio_code", model=tiny_model_dir, args=("--quantize", "int4")) as client:
        ready = await log_containing(client, READY)
        assert "weights int4" in ready.message
        doc = Doc(client, TEXT, "plaintext", ".txt")
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=doc.identifier(), position=doc.position(CURSOR)))
        assert result is not None and result.items and result.items[0].insert_text.strip()


async def test_quantize_setting_that_cannot_run_is_reported_and_the_server_stays_up(tiny_model_dir):
    settings = {**FAST, "dtype": "float32", "quantize": "int8"}
    async with session("neovim", model=tiny_model_dir, settings=settings, wait=None) as client:
        failed = await log_containing(client, FAILED, timeout=120)
        assert "float32 is the bit-exact parity mode" in failed.message
        doc = Doc(client, TEXT, "plaintext", ".txt")
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=doc.identifier(), position=doc.position(CURSOR)))
        assert result is None or not result.items
