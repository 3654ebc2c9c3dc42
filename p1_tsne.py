"""t-SNE of setting C's second-to-last-layer features on the TRAIN set, first vs last epoch.

The features are the 512-d output of the head's second ReLU, i.e. the input of its last Linear
(Classifier.penultimate in p1_finetune.py), computed in eval mode (BatchNorm running stats,
Dropout off) on the evaluation view of every training image. Both checkpoints embed the same
images; sklearn's TSNE maps each set to 2-D and the two scatter plots, coloured by class, are
drawn side by side in one PNG, each titled with its epoch. Up to 20 classes get a colour each
and a legend; Office-Home's 65 share a continuous scale with a colour bar.

    python3 p1_tsne.py --first runs/p1_finetune/C/epoch_001.pth \\
        --last runs/p1_finetune/C/last.pth --data-dir hw1_data/p1_data/office \\
        --output results/p1_tsne_C.png
    # quicker: a random subset of 1000 training images
    python3 p1_tsne.py ... --max-images 1000
"""

import argparse
from pathlib import Path

import numpy as np

import augment
import cli
import records
import utils
from p1_common import Classifier, load_classifier, load_office, run_batches


def get_args_parser():
    parser = argparse.ArgumentParser(
        "p1_tsne", formatter_class=cli.HelpFormatter,
        description="t-SNE of setting C's 512-d penultimate features (train set) at "
        "the first and the last epoch, two panels in one PNG.")
    parser.add_argument("--first", required=True, type=Path,
                        help="first-epoch checkpoint (epoch_001.pth of p1_finetune.py)")
    parser.add_argument("--last", required=True, type=Path, help="last-epoch checkpoint (last.pth)")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="Office-Home folder with train.csv and train/")
    parser.add_argument("--output", default=Path("results/p1_tsne_C.png"), type=Path,
                        help="the PNG to write")
    parser.add_argument("--max-images", default=None, type=int,
                        help="embed a random subset of N training images, drawn with --seed "
                        "(the same N and seed give the same images), as in every script; the "
                        "same subset for both checkpoints")
    parser.add_argument("--perplexity", default=30.0, type=float, help="of sklearn's TSNE")
    parser.add_argument("--batch-size", default=256, type=int, help="images per forward")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if any)")
    parser.add_argument("--amp", default=True, action=cli.BooleanFlag,
                        help="bf16 autocast on CUDA (no effect on CPU)")
    parser.add_argument("--seed", default=0, type=int, help="of the subset and of TSNE")
    parser.add_argument("--cache-dir", default=None, type=Path,
                        help="keep the decoded image bank here")
    return parser


def penultimate_features(model: Classifier, bank, image_size, batch_size, device, amp):
    view = augment.ClassificationAugment(image_size, train=False)
    return run_batches(model.penultimate, bank, view, batch_size, device, amp)  # (N, 512)


def tsne_2d(features, perplexity, seed):
    from sklearn.manifold import TSNE

    n = len(features)
    # sklearn needs perplexity < n; tiny smoke sets get a proportionally small one
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                ).fit_transform(features.cpu().numpy().astype(np.float64))  # (N, 2)


LEGEND_MAX = 20  # up to this many classes: one discrete colour each and a legend


def plot_panels(points, labels, titles, path, num_classes):
    """One PNG, one scatter per entry of `points`, coloured by class: up to LEGEND_MAX classes
    present, a distinct colour per class (tab10/tab20) and a legend; more (Office-Home's 65), a
    continuous colour scale over 0..num_classes-1 with a colour bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = np.unique(labels)
    discrete = len(present) <= LEGEND_MAX
    colours = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(points), figsize=(7 * len(points), 6.5), squeeze=False)
    for ax, xy, title in zip(axes[0], points, titles):
        if discrete:
            for i, c in enumerate(present):
                keep = labels == c
                ax.scatter(xy[keep, 0], xy[keep, 1], color=colours(i), s=12, alpha=0.85,
                           linewidths=0, label=str(c))
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="turbo", vmin=0,
                            vmax=max(num_classes - 1, 1), s=6, alpha=0.8, linewidths=0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    if discrete:
        axes[0][-1].legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           markerscale=2, frameon=False)
    else:
        fig.colorbar(sc, ax=list(axes[0]), label="class", fraction=0.025, pad=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.save_figure(fig, path, dpi=110, bbox_inches="tight")
    return fig


def main(args):
    device = utils.get_device(args.device)
    utils.seed_everything(args.seed)
    models = [load_classifier(path, device) for path in (args.first, args.last)]
    ckpt_args = models[0][1]
    if any(margs["setting"] != "C" for _, margs, _ in models):
        print("note: the report's t-SNE is of setting C; these checkpoints are of setting "
              + "/".join(margs["setting"] for _, margs, _ in models))
    bank, labels = load_office(args.data_dir, "train", ckpt_args["bank_size"], device,
                               args.cache_dir, args.max_images, args.seed)
    points, titles = [], []
    for model, margs, epoch in models:
        feats = penultimate_features(model, bank, margs["image_size"], args.batch_size, device,
                                     args.amp)
        points.append(tsne_2d(feats, args.perplexity, args.seed))
        titles.append(f"setting {margs['setting']}, epoch {epoch} ({len(feats)} train images)")
    fig = plot_panels(points, labels.cpu().numpy(), titles, args.output,
                      ckpt_args["num_classes"])
    print(f"wrote {args.output}")
    return fig


if __name__ == "__main__":
    cli.run(main, get_args_parser())
