"""placeholder while helper writes it"""
