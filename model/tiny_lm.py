"""A tiny Llama-style causal LM and its tokenizer, built locally from text (no download).

For CPU demos and tests: a byte-level BPE tokenizer trained on the given sentences and a randomly
initialised `LlamaForCausalLM`, saved as an ordinary transformers directory, so the rest of the code
loads it with `AutoModelForCausalLM` / `AutoTokenizer` exactly like a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from jstip.model.config import TinyLMConfig

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def build_tiny_lm(out_dir: str | Path, texts: Iterable[str], config: TinyLMConfig, seed: int = 0) -> Path:
    """Train the tokenizer on `texts`, initialise the LM with `seed`, save both to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # Spans are tokenized as " " + text (jstip.model.batching), so a word has the same tokens wherever a
    # plan cut the sentence; the tokenizer is trained on text in that form.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator((" " + t.strip() for t in texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    llama = LlamaConfig(vocab_size=len(fast), hidden_size=config.hidden, intermediate_size=config.intermediate,
                        num_hidden_layers=config.layers, num_attention_heads=config.heads,
                        num_key_value_heads=config.kv_heads, max_position_embeddings=config.max_positions,
                        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                        pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir
