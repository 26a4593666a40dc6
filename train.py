"""Train a DDPM: ``python train.py fit --config configs/digits.yaml`` (LightningCLI); a config may name another
model, e.g. ``configs/vae_digits.yaml`` trains the autoencoder of a latent DDPM."""

from lit_attr.cli import train_cli


def main() -> None:
    train_cli(save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
