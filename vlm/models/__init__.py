"""The captioning model: ViT encoder, text decoder, captioner."""
