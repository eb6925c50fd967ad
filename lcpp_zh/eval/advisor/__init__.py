"""The quantization advisor behind `lcpp-zh quants`: quantize to a ladder of types and measure each (run),
recommend one that fits in memory (pick), and draw KLD against size (plot). Uses the measuring and the
quantization rooms; the table is drawn by lcpp_zh.cli.quants_cmds."""
