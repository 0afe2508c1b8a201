"""The speech-LLM and everything that trains and evaluates it (no build stage imports this package).

    the network     speech_llm, encoder, ctc, tiny_lm, config; batching (sequence -> tensors), decode
    training        sequence_index -> sequence_pools -> loader -> training (checkpoints, device, distributed);
                    pretraining (the LM prior, from general_text and the version's text)
    evaluation      evaluation (decode a test version) -> metrics -> significance (bootstrap, verdicts)

A model id hashes this package's code less decode, evaluation, metrics and significance (jstip.version).
"""
