"""Rebuilds cross_init_core/face/weights/mtcnn.safetensors from the MTCNN weights in facenet-pytorch.

facenet-pytorch (MIT) ships the original MTCNN P/R/O-Net weights (Zhang et al., MIT; ported through
David Sandberg's facenet, MIT) as torch state dicts in facenet_pytorch/data/{pnet,rnet,onet}.pt.
Usage (once, by a maintainer; the pack itself never runs this):

    python -m pip download --no-deps facenet-pytorch -d /tmp/fp && unzip -q /tmp/fp/*.whl -d /tmp/fp/pkg
    python scripts/convert_mtcnn_weights.py /tmp/fp/pkg/facenet_pytorch/data

The fully connected layers of R-Net and O-Net were trained on a (width, height, channel) flattening of
their last feature map (the Caffe/MATLAB layout); their columns are reordered here so that the pack's
networks flatten in torch's usual (channel, height, width) order.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

logger = logging.getLogger("convert_mtcnn_weights")
OUT = Path(__file__).resolve().parents[1] / "cross_init_core" / "face" / "weights" / "mtcnn.safetensors"
# first dense layer of each net: the (channels, height, width) of the feature map it reads
FLATTENED = {"rnet.dense4.weight": (64, 3, 3), "onet.dense5.weight": (128, 3, 3)}


def convert(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for net in ("pnet", "rnet", "onet"):
        state = torch.load(folder / f"{net}.pt", map_location="cpu", weights_only=True)
        for key, value in state.items():
            tensors[f"{net}.{key}"] = value.detach().to(torch.float32).contiguous()
    for key, (c, h, w) in FLATTENED.items():
        weight = tensors[key]
        # column index was w*(H*C) + h*C + c; make it c*(H*W) + h*W + w
        tensors[key] = weight.reshape(-1, w, h, c).permute(0, 3, 2, 1).reshape(weight.shape[0], -1).contiguous()
    return tensors


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="facenet_pytorch/data folder holding pnet.pt, rnet.pt, onet.pt")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    tensors = convert(args.folder)
    metadata = {
        "model": "MTCNN (Zhang et al. 2016) P-Net, R-Net, O-Net",
        "source": "facenet-pytorch 2.6.0 facenet_pytorch/data/{pnet,rnet,onet}.pt (MIT)",
        "layout": "dense layers flatten (channel, height, width)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    logger.info("wrote %d tensors to %s", len(tensors), args.out)


if __name__ == "__main__":
    main()
