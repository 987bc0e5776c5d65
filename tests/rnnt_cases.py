"""The tiny Emformer RNN-T configuration shared by the RNN-T, conversion and decoding tests (torchaudio's
emformer_rnnt_model keywords). Segments of 8 + 4 input frames with time-reduction stride 2: the Emformer runs on
4 + 2 reduced frames. Blank is the last symbol (V - 1)."""

TINY_RNNT = dict(
    input_dim=8,
    encoding_dim=16,
    num_symbols=11,
    segment_length=8,
    right_context_length=4,
    time_reduction_input_dim=8,
    time_reduction_stride=2,
    transformer_num_heads=2,
    transformer_ffn_dim=32,
    transformer_num_layers=2,
    transformer_dropout=0.0,
    transformer_activation="gelu",
    transformer_left_context_length=6,
    transformer_max_memory_size=2,
    transformer_weight_init_scale_strategy="depthwise",
    transformer_tanh_on_mem=True,
    symbol_embedding_dim=12,
    num_lstm_layers=2,
    lstm_layer_norm=True,
    lstm_layer_norm_epsilon=1e-3,
    lstm_dropout=0.0,
)
S, R, STRIDE, V = 8, 4, 2, 11
