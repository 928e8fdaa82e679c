"""The LLM layer: backbones, SID vocabulary, prompts, constrained decoding, losses, training.

Submodules are imported on use (``from coea_cli.llm.backbone import load_backbone``); importing
this package loads nothing heavy.

- ``backbone``: ``load_backbone``, ``add_lora``, ``save_adapter``, ``load_adapter``,
  ``disable_cpu_bf16_repack``
- ``vocab``: ``sid_tokens``, ``add_sid_tokens``, ``cluster_to_text``, ``text_to_cluster``
- ``scratch``: ``build_scratch_backbone`` (the offline default backbone)
- ``prompts``: ``load_templates``, ``novelty_prompt``, ``relevance_prompt``, ``answer_token_ids``
- ``decoding``: ``ClusterTrie``, ``sample_clusters``, ``cluster_logprobs``, ``relevance_scores``
- ``losses``: ``sft_loss``, ``relevance_loss``, ``kl_to_previous``, ``dpo_loss``
- ``train``: ``train_novelty``, ``train_relevance``
"""
