"""The issue's check of the out-of-distribution score, through `POST /predict/image/cifar10` with
defaults: held-out CIFAR-10 photos (the validation split) and held-out outlier crops (the `eval`
sources of `training.ood_data`) sent as PNG files to the service (in this process, over
models/), and from the answers: the share abstained of each, and the score's AUROC per group.

    python -m benchmarks.ood_check --ood-data ../ood-cache --data ../shared/datasets/cifar10-train.tar.gz
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from training import data, ood, ood_data

BATCH = 32  # files per request


def answers(client: TestClient, images: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ood_score, abstain, label) of each image, as the native route answers them."""
    scores, abstained, labels = [], [], []
    for start in range(0, len(images), BATCH):
        files = []
        for i, pixels in enumerate(images[start : start + BATCH]):
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, "PNG")
            files.append(("file", (f"{i}.png", out.getvalue(), "image/png")))
        response = client.post(f"/predict/image/{model}", files=files)
        response.raise_for_status()
        body = response.json()
        for prediction in body.get("predictions", [body]):
            scores.append(prediction["ood_score"])
            abstained.append(prediction["abstain"])
            labels.append(prediction["label"])
    return np.array(scores), np.array(abstained), labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ood_check", description=__doc__)
    parser.add_argument("--ood-data", type=Path, required=True)
    parser.add_argument("--data", default="../shared/datasets/cifar10-train.tar.gz")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="cifar10")
    args = parser.parse_args(argv)
    validation = data.load_cifar10(args.data).validation
    outliers = ood_data.load(args.ood_data, "eval")
    settings = Settings(model_dir=args.models, max_batch_size=BATCH, workers=1, grpc_port=0)
    started = time.perf_counter()
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.2)
        in_scores, in_abstain, labels = answers(client, validation.x, args.model)
        out_scores, out_abstain, _ = answers(client, outliers["x"], args.model)
    accuracy = np.mean(np.array(labels) == np.array(data.CIFAR10_LABELS)[validation.y])
    print(
        f"{len(validation.y)} validation photos: accuracy {accuracy:.2%}, abstained {in_abstain.mean():.2%}"
    )
    for group in sorted(set(outliers["group"].tolist())):
        chosen = outliers["group"] == group
        print(
            f"{int(chosen.sum())} eval {group} crops: AUROC {ood.auroc(in_scores, out_scores[chosen]):.4f}, "
            f"FPR at 95% TPR {ood.fpr_at_95_tpr(in_scores, out_scores[chosen]):.2%}, "
            f"abstained {out_abstain[chosen].mean():.2%}"
        )
    print(f"({time.perf_counter() - started:.0f} s through the service)")


if __name__ == "__main__":
    main()
