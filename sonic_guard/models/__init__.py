"""Sonic's networks (UNet with audio attention, audio adapters, RIFE) and their checkpoint loading."""
