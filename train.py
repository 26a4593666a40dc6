"""Train a DDPM: ``python train.py fit --config configs/digits.yaml`` (LightningCLI)."""

from lit_attr.cli import LitAttrCLI
from lit_attr.data.datamodules import DiffusionDataModule
from lit_attr.ddpm_module import DDPMModule


def main() -> None:
    LitAttrCLI(DDPMModule, DiffusionDataModule, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
