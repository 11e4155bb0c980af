"""Corpus manifests: local LibriTTS trees and the built-in synthetic corpus."""
