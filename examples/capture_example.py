"""Capture the exact attention weights of a fused-attention model in a few lines.

python examples/capture_example.py
"""

import torch
from torch import nn

from lightning_attnviz import capture_attention

layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
model = nn.TransformerEncoder(layer, num_layers=2).eval()
tokens = torch.randn(8, 10, 32)
padding = torch.arange(10)[None, :] >= torch.randint(6, 11, (8,))[:, None]

with torch.no_grad():  # PyTorch takes its fused fast path here; capture leaves it running
    with capture_attention(model, samples=2) as cap:
        model(tokens, src_key_padding_mask=padding)

for key, record in cap.records.items():
    print(f"{key:22s} {tuple(record.weights.shape)}  path={record.path}  masked={record.masked}")
print("row sums of sample 0, head 0, layer 0:", cap.maps["layers.0.self_attn"][0, 0].sum(-1))
