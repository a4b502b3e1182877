"""MLPerf BERT data: pretraining examples as the reference script makes them, eval picks, TFRecords."""
