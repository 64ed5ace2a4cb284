pub mod tokenize;
