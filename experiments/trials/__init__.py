"""One training run of a command: how its network and data are made (`recipe`,
`vit`), the resumable trial with its epoch commit (`trial`, `callbacks`), and
reading a trained run back (`trained`)."""
