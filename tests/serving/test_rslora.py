"""rsLoRA (`use_rslora`: scale alpha/sqrt(r), not alpha/r) is served with its own scale: the vLLM
server's greedy answers equal in-process peft's, and differ from the same weights read as plain LoRA."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from registry.basemodels import EMBEDDED_TINY
from registry.store import Registry
from tests.serving.fixtures import Server, random_adapter, wait_until

PROMPTS = ["Hello from Oslo! My name is Vera Lind.", "the app crashes whenever I open the camera page."]


def _peft_answers(registry: Path, refs: list[str], tiny_base: Any) -> dict[tuple[str, str], str]:
    from serving.adapters import AdapterManager
    from serving.engine.base import GenParams
    from serving.engine.peft import PeftEngine
    from serving.settings import ServeSettings

    engine = PeftEngine(ServeSettings(base_model="tiny", dtype="float32"), tiny_base)
    manager = AdapterManager(Registry(registry), engine, tiny_base, EMBEDDED_TINY, 64, 16)

    async def go() -> dict[tuple[str, str], str]:
        await engine.start()
        out = {}
        for ref in refs:
            for prompt in PROMPTS:
                ids = engine.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
                )
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                async with manager.lease(ref) as target:
                    params = GenParams(max_tokens=12, temperature=0)
                    deltas = [
                        d async for batch in engine.generate("r", ids, params, target.adapter) for d in batch
                    ]
                out[(ref, prompt)] = "".join(d.text for d in deltas)
        return out

    return asyncio.run(go())


def test_rslora_is_served_with_alpha_over_sqrt_r(
    server: Server, adapters: tuple[Path, dict[str, str]], tmp_path: Path, tiny_base: Any
) -> None:
    registry = adapters[0]
    reg = Registry(registry)
    lineage = reg.get(adapters[1]["support"]).lineage
    rs = random_adapter(tmp_path / "rs", 16, ["q_proj", "v_proj", "o_proj"])  # alpha = r = 16
    cfg = json.loads((rs / "adapter_config.json").read_text())
    (rs / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))  # scale 16/4, not 1
    plain = tmp_path / "plain"
    shutil.copytree(rs, plain)
    (plain / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": False}))
    rs_ref = reg.push("rslora", rs, lineage).ref
    plain_ref = reg.push("rsplain", plain, lineage).ref

    client = server.client()

    def served(ref: str, prompt: str) -> str:
        r = client.chat.completions.create(
            model=ref, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
        )
        return str(r.choices[0].message.content)

    wait_until(lambda: ref_known(client, rs_ref) and ref_known(client, plain_ref), 5)
    reference = _peft_answers(registry, [rs_ref, plain_ref], tiny_base)
    for prompt in PROMPTS:
        for ref in (rs_ref, plain_ref):
            assert served(ref, prompt).rstrip("\ufffd") == reference[(ref, prompt)].rstrip("\ufffd"), (
                ref,
                prompt,
            )
    assert any(reference[(rs_ref, p)] != reference[(plain_ref, p)] for p in PROMPTS)  # the scale matters


def ref_known(client: Any, ref: str) -> bool:
    return ref in {m.id for m in client.models.list().data}
