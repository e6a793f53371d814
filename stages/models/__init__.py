"""The networks: the frozen backbone (timm), UniAD's reconstruction transformer and the conditional UNet."""
