"""Tiny random models and a tiny tokenizer for tests (no hub; built in memory)."""

from __future__ import annotations

import torch

VOCAB = 96


def make_tokenizer(vocab: int = VOCAB):
    """A tiny byte-level BPE tokenizer (trained on a fixed string, so it is deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:0],
        show_progress=False,
    )
    text = ["the cat sat on the mat. a dog ran to the park and the bird sang. " * 4]
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    return fast


def make_tiny_model(arch: str, vocab: int = VOCAB, seed: int = 0):
    """A 2-layer, d=32 random model of ``arch`` (llama, gpt2 or neox)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return LlamaForCausalLM(cfg)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return GPT2LMHeadModel(cfg)
    if arch == "neox":
        cfg = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return GPTNeoXForCausalLM(cfg)
    raise ValueError(arch)
