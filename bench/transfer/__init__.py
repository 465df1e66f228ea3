"""The transfer benchmark: `cli` chains the parts (`loopback`, `cut`, `codecs`, `rss`, `netns`);
`env` holds what they share, `proc` the helper processes, `standin` and `rawtls` the servers."""
