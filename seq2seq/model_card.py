"""The model card: a model folder's README.md, in the hub's own format.

The YAML metadata (languages, license, data sets, metrics, tags, and the test scores as a
`model-index`) is written by huggingface_hub's `ModelCardData`, so the hub shows the card as it
shows any other; the Markdown after it says what the model is, its data and their terms, its
scores with their sacreBLEU signatures, how it was trained, and its limits.
"""

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from seq2seq.pretrained import is_hub_id

MULTI30K_HUB_ID = "bentrevett/multi30k"
MULTI30K_TERMS_URL = "https://hockenmaier.cs.illinois.edu/DenotationGraph/data/"
METRICS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER"}


def _data_name(training_config: dict | None) -> str | None:
    """The corpus the run trained on, as its config names it; None when not known."""
    if training_config is None:
        return None
    data = training_config.get("data")
    data = data if isinstance(data, dict) else {}  # a hand-edited config.yaml may hold anything
    # No data_dir and no hub dataset: the Multi30k bundled with seq2seq (the configs' default).
    return str(data.get("hf_dataset") or data.get("data_dir") or MULTI30K_HUB_ID)


def _base_model(training_config: dict | None) -> str | None:
    """The model the run fine-tuned (`seq2seq-train --init_from`); None for a new network."""
    init_from = (training_config or {}).get("init_from")
    return None if init_from is None else str(init_from)


def _inherited_terms(base_model: str | None) -> str:
    """What the data section adds for a fine-tuned model: its base model's terms hold too."""
    if base_model is None:
        return ""
    return (
        f" It was fine-tuned from `{base_model}`, so that model's training data and its terms "
        "apply to this one too."
    )


def _data_section(name: str | None) -> str:
    if name is None:
        return (
            "The checkpoint did not record its training data (it carried no training "
            "configuration); whoever publishes this model should name the data and its terms "
            "here."
        )
    if "multi30k" not in name.lower():
        return f"Trained on `{name}`; the terms of that data apply to this model too."
    return (
        "Trained on Multi30k (task 1: Flickr30k image descriptions in English with German "
        "translations). The data is provided by its authors **solely "
        "for non-commercial research and educational use**, under the terms of Flickr30k "
        f"(<{MULTI30K_TERMS_URL}>), and so is this model, which was derived from it. If you "
        "publish results obtained with it, cite Elliott et al. (2016), \"Multi30K: "
        "Multilingual English-German Image Descriptions\", Proceedings of the 5th Workshop on "
        "Vision and Language, pages 70-74."
    )


def _scores_section(scores: dict | None, test_name: str, decoding: str) -> str:
    if scores is None:
        return "Not evaluated at export (`scripts/export.py --eval-src ... --eval-ref ...`)."
    rows = [
        f"| {label} | {scores[key]:.2f} | `{scores['signature'][key]}` |"
        for key, label in METRICS.items()
    ]
    return "\n".join(
        [
            f"{test_name}, {scores['sentences']:,} sentences, {decoding}; sacreBLEU on "
            "detokenized, cased text against the raw references:",
            "",
            "| metric | score | sacreBLEU signature |",
            "|---|---|---|",
            *rows,
        ]
    )


def _training_section(training_config: dict | None, checkpoints: list[str]) -> str:
    averaged = (
        f"The weights are the average of {len(checkpoints)} checkpoints of the run "
        f"({', '.join(f'`{c}`' for c in checkpoints)}). "
        if len(checkpoints) > 1
        else ""
    )
    if training_config is None:
        return averaged + "The training command is not known: the checkpoint did not carry it."
    config = yaml.safe_dump(training_config, sort_keys=False, allow_unicode=True)
    base_model = _base_model(training_config)
    how = f"Fine-tuned from `{base_model}`" if base_model else "Trained"
    return "\n".join(
        [
            averaged + how + " with seq2seq by",
            "",
            "```bash",
            "python scripts/train.py --config config.yaml",
            "```",
            "",
            "where `config.yaml` is the run's full configuration (also under "
            '`"training_config"` in `config.json`):',
            "",
            "<details><summary>config.yaml</summary>",
            "",
            "```yaml",
            config.rstrip(),
            "```",
            "",
            "</details>",
        ]
    )


def _architecture_table(config: dict, parameters: int) -> str:
    model = config["model_config"]
    tables = {
        (True, True): ", one table for source, target and output layer",
        (True, False): ", one table for source and target",
        (False, True): ", the target table is also the output layer",
        (False, False): "",
    }[model["share_embeddings"], model["tie_output_embedding"]]
    vocabulary = (
        f"one joint model of {config['src_vocab_size']:,} pieces"
        if config["joint_vocabulary"]
        else f"{config['src_vocab_size']:,} source and {config['tgt_vocab_size']:,} target pieces"
    )
    rows = [
        ("cell", f"`{model['cell']}`"),
        ("encoder", f"bidirectional, {model['encoder_layers']} layer(s) of "
                    f"2×{model['encoder_hidden_size']}"),
        ("decoder", f"{model['decoder_layers']} layer(s) of {model['decoder_hidden_size']}"),
        ("attention", f"additive (Bahdanau), {model['attention_size']}"),
        ("embeddings", f"{model['embedding_size']}{tables}"),
        ("SentencePiece", vocabulary),
        ("parameters", f"{parameters:,}, float32"),
    ]
    return "\n".join(["| part | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def render(
    config: dict,
    parameters: int,
    checkpoints: list[str],
    scores: dict | None = None,
    test_name: str = "",
    decoding: str = "",
) -> str:
    """The card of a model folder whose config.json is `config` (see seq2seq/pretrained.py).

    `scores` as `seq2seq.metrics.corpus_scores` returns them plus "sentences", measured on
    `test_name` with the search that `decoding` describes.
    """
    src, tgt = config["src_lang"], config["tgt_lang"]
    data_name = _data_name(config["training_config"])
    base_model = _base_model(config["training_config"])
    multi30k = data_name is not None and "multi30k" in data_name.lower()
    eval_results = [
        EvalResult(
            task_type="translation",
            task_name=f"Translation {src}-{tgt}",
            dataset_type=MULTI30K_HUB_ID if multi30k else test_name,
            dataset_name=test_name,
            metric_type=key,
            metric_name=label,
            metric_value=round(scores[key], 2),
            metric_config=scores["signature"][key],
        )
        for key, label in METRICS.items()
        if scores is not None
    ]
    cell = config["model_config"]["cell"]
    name = f"seq2seq-{cell}-{src}-{tgt}"
    card_data = ModelCardData(
        language=[src, tgt],
        license="other",
        license_name="multi30k-non-commercial" if multi30k else None,
        license_link=MULTI30K_TERMS_URL if multi30k else None,
        datasets=[MULTI30K_HUB_ID if multi30k else data_name] if data_name else None,
        # The hub links a fine-tuned model to its base model, which must be a hub id.
        base_model=base_model if base_model and is_hub_id(base_model) else None,
        metrics=list(METRICS),
        tags=["translation", "seq2seq", cell, "bahdanau-attention", "sentencepiece"],
        pipeline_tag="translation",
        library_name="seq2seq-nmt",
        model_name=name,
        eval_results=eval_results or None,
    )
    body = f"""
# {name}: {src} → {tgt} translation

A recurrent encoder-decoder with Bahdanau (additive) attention, trained with seq2seq (the
`seq2seq-nmt` package: PyTorch, Lightning, SentencePiece).

{_architecture_table(config, parameters)}

## Use

```bash
pip install -e .                                  # in a clone of seq2seq
echo 'A sentence.' | translate -m ORG/NAME          # this repo's hub id, or the folder's path
```

```python
from seq2seq.translator import Translator
translator = Translator.from_pretrained("ORG/NAME")  # or the folder's path
print(translator.translate(["A sentence."])[0][0].text)
```

Files: `config.json` (model configuration, vocabulary sizes, special-token ids, languages, the
training configuration), `model.safetensors` (weights), the SentencePiece model(s)
(`spm.model`, or `spm.src.model` and `spm.tgt.model`). Loading runs no code from the folder:
nothing in it is a pickle.

## Data and its terms

{_data_section(data_name)}{_inherited_terms(base_model)}

## Test scores

{_scores_section(scores, test_name, decoding)}

## Training

{_training_section(config["training_config"], checkpoints)}

## Limits

- It knows the domain and style of its training data: on Multi30k, short descriptions of
  pictures. Other text (news, dialogue, technical prose, long sentences) comes out much worse.
- One sentence per input line: it has no sentence splitter, and sources longer than 250
  pieces are cut (with a warning).
- A small recurrent model: no context beyond the sentence, and like any NMT model it can
  produce fluent output that is wrong; do not rely on it where errors matter.
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))
