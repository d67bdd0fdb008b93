"""Network backbones. Each backbone exposes the same group-by-group interface
(see ``convcodec.nets.convdraw.ConvDraw``) so the codec loop drives any of them."""
