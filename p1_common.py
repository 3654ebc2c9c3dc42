"""What the Problem 1 scripts share: the classifier (ResNet50 + the report's head), loading a
classifier checkpoint, the Office-Home banks, and batched forward passes over a bank.

On the grading path (hw1_1.sh -> p1_inference.py): Python 3.8, torch 2.4, the course's packages.
"""

from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import data
import utils
from errors import UserError, first_line

# --arch: the report's ResNet50, or a ResNet18 for demos on a CPU (about 4x faster there, and it
# learns from a few hundred 32-px images); both keep torchvision's state_dict names
ARCHS = {"resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet18": (BasicBlock, [2, 2, 2, 2])}
ARCH_HELP = ("the backbone: resnet50 (the report's, default) or resnet18 (a light one for demos "
             "on a CPU); the SL/BYOL backbone loaded must be the same network")


class Classifier(ResNet):
    """torchvision resnet50(weights=None) (or resnet18: `arch`) whose `fc` is the report's head.

    Subclassing ResNet keeps resnet50()'s state_dict keys (conv1.weight, layer1.0..., fc.N.*),
    so pretrain_model_SL.pt and backbone.pth load as they are, and "backbone" means every
    tensor whose name does not start with "fc.".
    """

    def __init__(self, num_classes=65, freeze_backbone=False, freeze_bn=True, arch="resnet50"):
        if arch not in ARCHS:
            raise UserError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
        block, layers = ARCHS[arch]
        super().__init__(block, layers)
        self.arch = arch
        self.fc = nn.Sequential(  # the report's head, layer order as in the report
            nn.Linear(512 * block.expansion, 1024), nn.BatchNorm1d(1024), nn.Dropout(0.4),
            nn.ReLU(),
            nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.Dropout(0.3), nn.ReLU(),
            nn.Linear(512, num_classes))
        self.freeze_backbone = freeze_backbone
        self.freeze_bn = freeze_bn
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("fc.") or not freeze_backbone)

    def train(self, mode=True):
        # a frozen backbone stays in eval mode whatever the loop asks: its BatchNorm layers then
        # normalise with the loaded running stats and never update them (freeze_bn=False: the
        # report's code, where requires_grad is off but model.train() still moves the stats)
        super().train(mode)
        if self.freeze_backbone and self.freeze_bn:
            for name, child in self.named_children():
                if name != "fc":
                    child.train(False)
        return self

    def embed(self, x):
        """(B, 3, S, S) -> (B, 2048) (512 for resnet18): the avgpool output, what the head sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C, S/32, S/32)
        return torch.flatten(self.avgpool(x), 1)

    def penultimate(self, x):
        """(B, 512): output of the head's second ReLU = the input of its last Linear (the
        "second-to-last layer" features of the t-SNE; Dropout is inactive in eval mode)."""
        return self.fc[:-1](self.embed(x))

    def forward(self, x):
        return self.fc(self.embed(x))  # (B, num_classes) logits


def backbone_state(model):
    return {k: v for k, v in utils.unwrap_model(model).state_dict().items()
            if not k.startswith("fc.")}


def load_classifier(path, device):
    """Rebuild a Classifier from a p1_finetune.py checkpoint alone (its args and weights)
    -> (model in eval mode, the run's args, the checkpoint's epoch)."""
    ckpt = utils.load_checkpoint(path, kind="p1_classifier")
    args = ckpt["args"]
    try:
        model = utils.build_loaded(
            lambda: Classifier(args["num_classes"], arch=args.get("arch", "resnet50")),
            ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path} does not fit the classifier its args describe "
                        f"({first_line(e, 120)}); train or download it again") from None
    device = torch.device(device)
    model.to(device, memory_format=utils.memory_format(device)).eval()
    return model, args, ckpt.get("epoch")


def office_dir(data_dir):
    data_dir = Path(data_dir)
    return data_dir / "office" if (data_dir / "office" / "train.csv").exists() else data_dir


def load_office(data_dir, split, bank_size, device, cache_dir=None, max_images=None, seed=0):
    """Office-Home split -> (ImageBank (N, 3, s, s) uint8 on `device`, labels (N,) int64)."""
    data_dir = office_dir(data_dir)
    if not (data_dir / f"{split}.csv").is_file():
        raise UserError(f"{data_dir} has no {split}.csv; --data-dir must be the "
                              "Office-Home folder with train.csv, val.csv, train/ and val/ "
                              "(run `bash hw1_download.sh`)")
    rows = data.read_office_csv(data_dir / f"{split}.csv", data_dir / split)
    rows = data.subset(rows, max_images, seed)  # --max-images: a random subset, as everywhere
    bank = data.ImageBank.from_paths([r["path"] for r in rows], size=bank_size,
                                      cache_dir=cache_dir, progress=True).to(device)
    return bank, torch.tensor([r["label"] for r in rows], device=device)


@torch.no_grad()
def run_batches(fn, bank, transform, batch_size, device, amp=True, shard=(0, 1)):
    """fn(transform(images)) over a whole bank in order, batch by batch -> (N, ...) float32.
    shard=(rank, world_size): only the rows rank, rank + world_size, ... (sharded validation)."""
    outs = []
    for idx in data.index_batches(len(bank), batch_size, shuffle=False, drop_last=False,
                                   device=bank.device, rank=shard[0], world_size=shard[1]):
        x = transform(bank.batch(idx).to(device, non_blocking=True))
        with utils.autocast(device, amp):
            outs.append(fn(x.contiguous(memory_format=utils.memory_format(device))).float())
    return torch.cat(outs)
