"""Collaborative Semantic IDs (`coea build-sids`): RQ-VAE or residual k-means codes,
collision handling, cluster descriptions. The SID layout and token format live in
`coea_cli.workspace.sids`, which every stage reads them from."""
