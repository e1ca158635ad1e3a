"""Weight conversion between our parameter trees and Hugging Face / PyTorch checkpoints."""
